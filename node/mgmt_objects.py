"""Old home of node/mgmt/objects.py: these names stay importable here for
node/mgmt_definitions.py until it moves into node/mgmt/."""

from node.mgmt.framework import PLACEHOLDER, ApiSession, product_version  # noqa: F401
