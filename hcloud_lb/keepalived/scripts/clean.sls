# -*- coding: utf-8 -*-
# vim: ft=sls
# Needs only the lookup values: it works with the pillar gone or invalid.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import hcloud_lb with context %}

include:
  - {{ tplroot }}.keepalived.service.clean

keepalived's scripts are removed:
  file.absent:
    - name: {{ hcloud_lb.lookup.keepalived.scripts_dir }}
    - require:
      - sls: {{ tplroot }}.keepalived.service.clean
