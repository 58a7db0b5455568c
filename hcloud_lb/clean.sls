# -*- coding: utf-8 -*-
# vim: ft=sls
# Undoes hcloud_lb in reverse: keepalived first (the node leaves the VRRP
# group), then haproxy, the hook, the floating IPs on the host, the packages.
# No clean state needs a valid pillar: they take the paths, services and
# packages from map.jinja's lookup (the OS maps and hcloud_lb:lookup), and
# what only the pillar knew (the addresses on the interface, ip_nonlocal_bind)
# from the files the apply wrote. So a decommission that first takes the node
# out of the pillar, or drops the token, still removes everything.
include:
  - .keepalived.clean
  - .haproxy.clean
  - .hook.clean
  - .floating_ips.clean
  - .package.clean
