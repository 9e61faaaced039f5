"""The node process's services around the broker: its HTTP servers (``web``: metrics, health,
the management app), Prometheus metrics (``metrics``), memory and disk alarms (``alarms``),
peer discovery (``discovery``), watching the other members (``membership``: node down,
isolation, command levels) and taking the node out of service (``maintenance``)."""
