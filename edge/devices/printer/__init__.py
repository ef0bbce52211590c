"""Receipt printing: documents, pure ESC/POS layout, transports, driver, virtual printer."""
