# -*- coding: utf-8 -*-
# vim: ft=sls
# Needs only the lookup values: it works with the pillar gone or invalid.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import hcloud_lb with context %}

include:
  - {{ tplroot }}.keepalived.service.clean
  - {{ tplroot }}.haproxy.service.clean

haproxy and keepalived are removed:
  pkg.removed:
    - pkgs: {{ hcloud_lb.lookup.pkgs | json }}
    - require:
      - sls: {{ tplroot }}.keepalived.service.clean
      - sls: {{ tplroot }}.haproxy.service.clean
