"""Business tools the dialog calls for the verified caller: the adapter interface (adapter), the
PostgreSQL back office (backoffice), the retail tools on it (retail) and a demo shop (demo_backoffice)."""
