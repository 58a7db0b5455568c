# -*- coding: utf-8 -*-
# vim: ft=sls
# haproxy.cfg from the pillar. check_cmd runs `haproxy -c` on the candidate
# before it replaces the live file: a rejected config leaves the old file
# (and the running haproxy) untouched, and this state fails with haproxy's
# message.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/libvalidate.jinja" import errors, hcloud_lb with context %}

include:
  - {{ tplroot }}.validate
  - {{ tplroot }}.package
{%- if not errors %}
{%-   set lookup = hcloud_lb.lookup.haproxy %}

haproxy's stats socket directory exists:
  file.directory:
    - name: {{ salt['file.dirname'](hcloud_lb.haproxy.stats_socket) }}
    - makedirs: true
    - require:
      - sls: {{ tplroot }}.package

haproxy's config is managed:
  file.managed:
    - name: {{ lookup.config }}
    - source: salt://{{ tplroot }}/haproxy/files/haproxy.cfg.jinja
    - template: jinja
    - context:
        tpldir: {{ tpldir }}
    - user: root
    - group: {{ lookup.group }}
    - mode: '0640'
    - check_cmd: {{ lookup.get('bin', '/usr/sbin/haproxy') }} -c -q -f
    - require:
      - sls: {{ tplroot }}.package
      - file: haproxy's stats socket directory exists
{%- endif %}
