# -*- coding: utf-8 -*-
# vim: ft=sls
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/libvalidate.jinja" import errors, hcloud_lb with context %}

include:
  - {{ tplroot }}.validate
  - {{ tplroot }}.keepalived.service.clean
  - {{ tplroot }}.haproxy.service.clean
{%- if not errors %}

haproxy and keepalived are removed:
  pkg.removed:
    - pkgs: {{ hcloud_lb.lookup.pkgs | json }}
    - require:
      - sls: {{ tplroot }}.keepalived.service.clean
      - sls: {{ tplroot }}.haproxy.service.clean
{%- endif %}
