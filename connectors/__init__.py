"""Connectors: one module per data source, all streaming Arrow record batches behind one `Connector`."""
