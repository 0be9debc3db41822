"""asyncio listeners: thin adapters from sockets to the sans-IO protocol cores."""
