"""The DataArts Factory service: the client, its HTTP transport, signing and auth.

`DlfClient` sends `start`/`stop`/`run-immediate` and the status queries that
reconcile a lost answer; `transport.HttpPool` is the lean HTTP/1.1 pool under
it (with the write-ahead hook that puts the ledger's intent on disk before a
request leaves); `signing` is SDK-HMAC-SHA256; `auth` picks AK/SK, an IAM
token or an IAM password login (`iam`) from the environment; `proxy` which forward proxy
a URL goes through (`--proxy`, HTTPS_PROXY, NO_PROXY); `regions` the SDK's region
tables; `answers` the SDK's error-body shapes; `listing` the paged job and
instance lists (read to `total`) that snapshot, wait and verify build on. Nothing
here knows the ledger or the dispatcher.
"""

from __future__ import annotations

from launcher.dlf.auth import (
    AkSkAuth,
    Auth,
    NoAuth,
    auth_from_env,
    check_credentials,
    check_url,
)
from launcher.dlf.client import DlfClient, endpoint_for_region, job_body, path_segment
from launcher.dlf.iam import iam_endpoint_for_region
from launcher.dlf.listing import (
    InstanceLookup,
    JobEntry,
    JobLookup,
    ListingFailed,
    QueryAnswer,
    find_job,
    instance,
    instances,
    jobs,
)
from launcher.dlf.proxy import ProxySettings
from launcher.dlf.transport import backend_options

__all__ = [
    "AkSkAuth",
    "Auth",
    "DlfClient",
    "InstanceLookup",
    "JobEntry",
    "JobLookup",
    "ListingFailed",
    "NoAuth",
    "ProxySettings",
    "QueryAnswer",
    "auth_from_env",
    "backend_options",
    "check_credentials",
    "check_url",
    "endpoint_for_region",
    "find_job",
    "iam_endpoint_for_region",
    "instance",
    "instances",
    "job_body",
    "jobs",
    "path_segment",
]
