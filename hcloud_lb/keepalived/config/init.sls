# -*- coding: utf-8 -*-
# vim: ft=sls
# keepalived.conf, root-only (it holds the VRRP password). check_cmd runs
# `keepalived -t` on the candidate before it replaces the live file.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/libvalidate.jinja" import errors, hcloud_lb with context %}

include:
  - {{ tplroot }}.validate
  - {{ tplroot }}.package
  - {{ tplroot }}.keepalived.scripts
{%- if not errors %}

keepalived's config is managed:
  file.managed:
    - name: {{ hcloud_lb.lookup.keepalived.config }}
    - source: salt://{{ tplroot }}/keepalived/files/keepalived.conf.jinja
    - template: jinja
    - context:
        tpldir: {{ tpldir }}
    - user: root
    - group: root
    - mode: '0600'
    - makedirs: true
    - show_changes: false
    - check_cmd: {{ hcloud_lb.lookup.keepalived.get('bin', '/usr/sbin/keepalived') }} -t -f
    - require:
      - sls: {{ tplroot }}.package
      - sls: {{ tplroot }}.keepalived.scripts
{%- endif %}
