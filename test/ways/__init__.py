"""Master + minion and salt-ssh tests; a package so its conftest is not imported as `conftest`."""
