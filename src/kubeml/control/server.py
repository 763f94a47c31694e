"""`python -m kubeml.control.server`: the control plane's entry point (the HTTP edge's `main`)."""

from kubeml.control.edge.app import create_app, main, run_server

__all__ = ["create_app", "main", "run_server"]

if __name__ == "__main__":
    raise SystemExit(main())
