# Type stubs for the Rust extension module ferrolm._core (checked by mypy.stubtest in the tests).

__all__ = [
    "__version__",
    "_fail_for_tests",
    "_pool_workers",
    "_sleep_detached",
    "cpu_features",
    "get_num_threads",
    "set_num_threads",
]

__version__: str

def cpu_features() -> dict[str, bool]: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...

# Test support; not part of the public API.
def _pool_workers() -> int: ...
def _fail_for_tests(kind: str) -> None: ...
def _sleep_detached(seconds: float) -> None: ...
