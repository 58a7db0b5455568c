# -*- coding: utf-8 -*-
# vim: ft=sls
# Lets haproxy bind each group's address on the node that does not hold it
# yet. floating_ip_binding "interface": the floating IPs on public_interface
# of both nodes, now and persistently (as Hetzner documents; the cloud routes
# each address to one node only). "nonlocal": ip_nonlocal_bind instead. A
# group bound to an alias IP always needs ip_nonlocal_bind: keepalived puts
# the alias IP on the private interface of the MASTER only.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/libvalidate.jinja" import errors, hcloud_lb with context %}

include:
  - {{ tplroot }}.validate
{%- if not errors %}
{%-   set alias_ips = [] %}
{%-   for spec in hcloud_lb.alias_ips.values() %}
{%-     do alias_ips.extend(spec.ips) %}
{%-   endfor %}
{%-   set bound = hcloud_lb.groups.values() | map(attribute='address') | list %}
{%-   set addresses = bound | reject('in', alias_ips) | list %}
{%-   set interface = hcloud_lb.public_interface %}
{%-   set network = hcloud_lb.lookup.network %}
{%-   set config = network.config | replace('{interface}', interface) %}
{%-   set nonlocal = bound if hcloud_lb.floating_ip_binding == 'nonlocal' else bound | select('in', alias_ips) | list %}
{%-   if nonlocal %}

haproxy may bind IPv4 addresses this node does not hold:
  sysctl.present:
    - name: net.ipv4.ip_nonlocal_bind
    - value: 1
    - config: /etc/sysctl.d/60-hcloud-lb.conf
{%-     if nonlocal | select('match', '.*:') | list %}

haproxy may bind IPv6 addresses this node does not hold:
  sysctl.present:
    - name: net.ipv6.ip_nonlocal_bind
    - value: 1
    - config: /etc/sysctl.d/60-hcloud-lb.conf
{%-     endif %}
{%-   endif %}
{%-   if hcloud_lb.floating_ip_binding == 'interface' and addresses %}
{%-     for address in addresses %}
{%-       set cidr = address ~ ('/64' if ':' in address else '/32') %}

{#- nodad: the cloud routes the /64 to one server, so duplicate address
    detection finds nothing, and it would hold the address tentative for a
    second, in which haproxy cannot bind it ("Cannot assign requested
    address"). #}
{{ address }} is on {{ interface }}:
  cmd.run:
    - name: ip addr replace {{ cidr | quote }} dev {{ interface | quote }}{{ ' nodad' if ':' in address else '' }}
    - unless: ip -o addr show dev {{ interface | quote }} | grep -qF {{ (' ' ~ cidr ~ ' ') | quote }}
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
