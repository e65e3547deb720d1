"""Run one of Swift's servers (the packages' code) with the swift.conf beside its config file.

usage: python3 serve.py {account,container,object,proxy}-server CONF_FILE

Swift's servers always read /etc/swift/swift.conf (hash prefix/suffix, storage policies, constraints),
whatever their `swift_dir` says; this points Swift at CONF_FILE's directory first, so a state directory of
deploy/swift/start.sh is self-contained and /etc/swift is never read or changed. Then it does what
/usr/bin/swift-<name>-server does (swift.common.wsgi.run_wsgi), with the log on stderr (their -v).
Run it with Swift's own interpreter (the shebang of swift-proxy-server), not a virtual environment's.
"""

import os
import sys

from swift.common import utils

name, conf_file = sys.argv[1], sys.argv[2]
utils.set_swift_dir(os.path.dirname(os.path.abspath(conf_file)))  # swift.conf and its hash prefix/suffix

from swift.common import constraints, storage_policy  # noqa: E402

storage_policy.reload_storage_policies()  # the policies of this swift.conf, not /etc/swift's
constraints.reload_constraints()

from swift.common.wsgi import run_wsgi  # noqa: E402

options = {"verbose": True}
if name == "object-server":
    from swift.obj import server

    options["global_conf_callback"] = server.global_conf_callback  # as swift-object-server passes
sys.exit(run_wsgi(conf_file, name, **options))
