# -*- coding: utf-8 -*-
# vim: ft=sls
# Needs only the lookup values: it works with the pillar gone or invalid.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import hcloud_lb with context %}
{%- set haproxy = hcloud_lb.lookup.haproxy %}

haproxy is stopped and disabled:
  service.dead:
    - name: {{ haproxy.service }}
{%- if haproxy.get('enable', true) %}
    - enable: false
{%- endif %}
    # Debian's init script answers every action, status included, with
    # success once the config is gone: a second clean would find haproxy
    # "running" and fail to stop it. The process tells (systemd ignores sig).
    - sig: {{ haproxy.get('bin', '/usr/sbin/haproxy') }}
