# -*- coding: utf-8 -*-
# vim: ft=sls
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/libvalidate.jinja" import errors, hcloud_lb with context %}

include:
  - {{ tplroot }}.validate
  - {{ tplroot }}.keepalived.service.clean
{%- if not errors %}

keepalived's scripts are removed:
  file.absent:
    - name: {{ hcloud_lb.lookup.keepalived.scripts_dir }}
    - require:
      - sls: {{ tplroot }}.keepalived.service.clean
{%- endif %}
