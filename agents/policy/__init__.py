"""The policy: its YAML format, versions (publish, amend, restore), the editor's pages, and the
kill switch (service, reads, API, page)."""
