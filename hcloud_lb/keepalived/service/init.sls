# -*- coding: utf-8 -*-
# vim: ft=sls
# A changed config reloads keepalived (SIGHUP): the instance keeps its state.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/libvalidate.jinja" import errors, hcloud_lb with context %}

include:
  - {{ tplroot }}.validate
  - {{ tplroot }}.keepalived.config
  - {{ tplroot }}.hook
{%- if not errors %}

keepalived is running:
  service.running:
    - name: {{ hcloud_lb.lookup.keepalived.service }}
{#- lookup:keepalived:enable false leaves the boot configuration alone. #}
{%- if hcloud_lb.lookup.keepalived.get('enable', true) %}
    - enable: true
{%- endif %}
    - reload: true
    # Debian's sysvinit script has no status action; the process tells
    # (systemd ignores sig). Salt's ps match skips lines that hold its own
    # PID as a substring: where PIDs are 2-3 digits (a fresh container) it
    # can miss keepalived, so start such hosts' PIDs higher.
    - sig: {{ hcloud_lb.lookup.keepalived.get('bin', '/usr/sbin/keepalived') }}
    - require:
      - sls: {{ tplroot }}.keepalived.config
      - sls: {{ tplroot }}.hook
    - watch:
      - file: keepalived's config is managed
{%- endif %}
