"""Pure ACPI builders: table framing, NFIT, AML, the NVDIMM SSDT and the DSM page layout."""
