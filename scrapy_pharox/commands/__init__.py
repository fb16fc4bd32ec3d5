"""The ``scrapy pharox-*`` commands, registered through the ``scrapy.commands``
entry point: load, inspect, check and fix pools without writing Python."""
