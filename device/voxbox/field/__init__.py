"""Tools for installers and field technicians: self-test, support report, provisioning, first boot, front-end replay."""
