"""Old home of the management API's framework, now node/mgmt/: these names stay
importable here for node/mgmt_definitions.py until it moves into node/mgmt/."""

from node.mgmt.framework import *  # noqa: F403
