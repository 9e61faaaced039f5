"""Old home of node/mgmt/views.py, importable here for node/mgmt_definitions.py until it
moves into node/mgmt/."""

from node.mgmt.views import *  # noqa: F403
