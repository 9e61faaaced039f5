"""Old home of node/mgmt/input.py, importable here for node/mgmt_definitions.py until it
moves into node/mgmt/."""

from node.mgmt.input import *  # noqa: F403
