# -*- coding: utf-8 -*-
# vim: ft=sls
# A changed config reloads haproxy: the new processes take over the listeners
# and the old ones finish their established connections.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/libvalidate.jinja" import errors, hcloud_lb with context %}

include:
  - {{ tplroot }}.validate
  - {{ tplroot }}.haproxy.config
{%- if not errors %}

haproxy is running:
  service.running:
    - name: {{ hcloud_lb.lookup.haproxy.service }}
{#- lookup:haproxy:enable false leaves the boot configuration alone. #}
{%- if hcloud_lb.lookup.haproxy.get('enable', true) %}
    - enable: true
{%- endif %}
    - reload: true
    - require:
      - sls: {{ tplroot }}.haproxy.config
    - watch:
      - file: haproxy's config is managed
{%- endif %}
