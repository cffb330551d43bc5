#!/usr/bin/env python3
"""Test plugin: keeps calling the PDK after ``kong.response.exit`` (kong-pdk lets code run on).

The results of the late calls go to the plugin server's log, where tests read them.
"""

import logging

version = "0.1.0"
priority = 10
Schema = ()
log = logging.getLogger("after_exit_plugin")


class Plugin:
    def __init__(self, config):
        self.config = config

    def access(self, kong):
        kong.response.exit(403, "bye")
        logged = kong.log.info("late log line")
        try:
            late = kong.client.get_ip()
        except Exception as error:
            late = f"raised {type(error).__name__}"
        log.warning("after exit: log=%r call=%r", logged, late)
