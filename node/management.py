"""Old home of the management API's framework and access handlers, now node/mgmt/: these
names stay importable here for node/mgmt_definitions.py until it moves into node/mgmt/."""

from node.mgmt.access import (  # noqa: F401
    MAX_TAGS,
    USER_LIMITS,
    VHOST_LIMITS,
    permission_json,
    topic_json,
    user_json,
)
from node.mgmt.framework import *  # noqa: F403
