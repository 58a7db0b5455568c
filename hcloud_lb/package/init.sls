# -*- coding: utf-8 -*-
# vim: ft=sls
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/libvalidate.jinja" import errors, hcloud_lb with context %}

include:
  - {{ tplroot }}.validate
{%- if not errors %}

haproxy and keepalived are installed:
  pkg.installed:
    - pkgs: {{ hcloud_lb.lookup.pkgs | json }}
{%- endif %}
