# -*- coding: utf-8 -*-
# vim: ft=sls
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/libvalidate.jinja" import errors, hcloud_lb with context %}

include:
  - {{ tplroot }}.validate
  - {{ tplroot }}.keepalived.service.clean
{%- if not errors %}

the failover hook's config is removed:
  file.absent:
    - name: {{ hcloud_lb.lookup.hook_config_dir }}
    - require:
      - sls: {{ tplroot }}.keepalived.service.clean

the failover hook's cache is removed:
  file.absent:
    - name: {{ hcloud_lb.lookup.hook_cache_dir }}
    - require:
      - sls: {{ tplroot }}.keepalived.service.clean
{%- endif %}
