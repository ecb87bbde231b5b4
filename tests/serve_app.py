"""One way for tests to run the Serve app on a real local Ray cluster and tear it down again
(the starter itself lives in serve.launch, so benches use the same one)."""

from serve.launch import free_port, running_app

__all__ = ["free_port", "running_app"]
