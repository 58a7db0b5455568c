# -*- coding: utf-8 -*-
# vim: ft=sls
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/libvalidate.jinja" import errors, hcloud_lb with context %}

include:
  - {{ tplroot }}.validate
  - {{ tplroot }}.haproxy.service.clean
{%- if not errors %}

haproxy's config is removed:
  file.absent:
    - name: {{ hcloud_lb.lookup.haproxy.config }}
    - require:
      - sls: {{ tplroot }}.haproxy.service.clean
{%- endif %}
