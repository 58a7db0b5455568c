# -*- coding: utf-8 -*-
# vim: ft=sls
# Lets haproxy bind each group's floating IP on the node that does not hold
# it yet. floating_ip_binding "interface": the addresses on public_interface
# of both nodes, now and persistently (as Hetzner documents; the cloud routes
# each address to one node only). "nonlocal": ip_nonlocal_bind instead.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/libvalidate.jinja" import errors, hcloud_lb with context %}

include:
  - {{ tplroot }}.validate
{%- if not errors %}
{%-   set addresses = hcloud_lb.groups.values() | map(attribute='address') | list %}
{%-   set interface = hcloud_lb.public_interface %}
{%-   set network = hcloud_lb.lookup.network %}
{%-   set config = network.config | replace('{interface}', interface) %}
{%-   if hcloud_lb.floating_ip_binding == 'nonlocal' %}

haproxy may bind IPv4 addresses this node does not hold:
  sysctl.present:
    - name: net.ipv4.ip_nonlocal_bind
    - value: 1
    - config: /etc/sysctl.d/60-hcloud-lb.conf
{%-     if addresses | select('match', '.*:') | list %}

haproxy may bind IPv6 addresses this node does not hold:
  sysctl.present:
    - name: net.ipv6.ip_nonlocal_bind
    - value: 1
    - config: /etc/sysctl.d/60-hcloud-lb.conf
{%-     endif %}
{%-   else %}
{%-     for address in addresses %}
{%-       set cidr = address ~ ('/64' if ':' in address else '/32') %}

{{ address }} is on {{ interface }}:
  cmd.run:
    - name: ip addr replace {{ cidr }} dev {{ interface }}
    - unless: ip -o addr show dev {{ interface }} | grep -qF ' {{ cidr }} '
{%-     endfor %}
{%-     if network.style == 'wicked' %}

the floating IPs are on {{ interface }} after a reboot:
  file.blockreplace:
    - name: {{ config }}
    - marker_start: '# BEGIN hcloud_lb floating IPs (managed by Salt)'
    - marker_end: '# END hcloud_lb floating IPs'
    - content: |-
{%-       for address in addresses %}
        IPADDR_hcloudlb{{ loop.index }}='{{ address }}/{{ 64 if ':' in address else 32 }}'
{%-       endfor %}
    - append_if_not_found: true
{%-     else %}

the floating IPs are on {{ interface }} after a reboot:
  file.managed:
    - name: {{ config }}
    - source: salt://{{ tplroot }}/floating_ips/files/{{ network.style }}.jinja
    - template: jinja
    - context:
        interface: {{ interface }}
        addresses: {{ addresses | json }}
    - user: root
    - group: root
    - mode: '{{ '0755' if network.style == 'networkmanager' else '0600' if network.style == 'netplan' else '0644' }}'
    - makedirs: true
{%-     endif %}
{%-   endif %}
{%- endif %}
