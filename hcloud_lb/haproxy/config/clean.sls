# -*- coding: utf-8 -*-
# vim: ft=sls
# Needs only the lookup values: it works with the pillar gone or invalid.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import hcloud_lb with context %}

include:
  - {{ tplroot }}.haproxy.service.clean

haproxy's config is removed:
  file.absent:
    - name: {{ hcloud_lb.lookup.haproxy.config }}
    - require:
      - sls: {{ tplroot }}.haproxy.service.clean
