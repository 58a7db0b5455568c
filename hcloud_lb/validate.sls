# -*- coding: utf-8 -*-
# vim: ft=sls
# Renders one failing state when the pillar is invalid; every other sls of the
# formula then renders nothing, so a bad pillar changes nothing on the host.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/libvalidate.jinja" import errors with context %}
{%- if errors %}

hcloud_lb pillar is invalid, nothing was changed:
  test.fail_without_changes:
    - comment: |-
        hcloud_lb pillar is invalid, nothing was changed:
        {%- for error in errors %}
        - {{ error }}
        {%- endfor %}
    - failhard: true
{%- endif %}
