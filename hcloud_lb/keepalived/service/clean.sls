# -*- coding: utf-8 -*-
# vim: ft=sls
# Stopping keepalived hands the addresses to the other node (it becomes
# MASTER); removing the state file ends the re-assert loop at its next tick.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/libvalidate.jinja" import errors, hcloud_lb with context %}

include:
  - {{ tplroot }}.validate
{%- if not errors %}

keepalived is stopped and disabled:
  service.dead:
    - name: {{ hcloud_lb.lookup.keepalived.service }}
{%- if hcloud_lb.lookup.keepalived.get('enable', true) %}
    - enable: false
{%- endif %}
    - sig: {{ hcloud_lb.lookup.keepalived.get('bin', '/usr/sbin/keepalived') }}

keepalived's recorded state is removed:
  file.absent:
    - name: {{ hcloud_lb.lookup.run_dir }}
    - require:
      - service: keepalived is stopped and disabled
{%- endif %}
