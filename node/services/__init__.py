"""The node process's services around the broker: its HTTP servers (``web``: metrics, health,
the management app), Prometheus metrics (``metrics``), memory and disk alarms (``alarms``),
peer discovery (``discovery``) and taking the node out of service (``maintenance``)."""
