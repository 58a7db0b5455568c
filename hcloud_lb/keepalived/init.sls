# -*- coding: utf-8 -*-
# vim: ft=sls
include:
  - .scripts
  - .config
  - .service
