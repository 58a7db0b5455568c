# -*- coding: utf-8 -*-
# vim: ft=sls
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/libvalidate.jinja" import errors, hcloud_lb with context %}

include:
  - {{ tplroot }}.validate
{%- if not errors %}

haproxy is stopped and disabled:
  service.dead:
    - name: {{ hcloud_lb.lookup.haproxy.service }}
{%- if hcloud_lb.lookup.haproxy.get('enable', true) %}
    - enable: false
{%- endif %}
{%- endif %}
