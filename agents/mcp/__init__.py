"""The MCP front door: the console's own MCP endpoint (``/mcp``) in front of upstream MCP servers
registered in the policy. Every ``tools/call`` is decided by the gateway's own use cases
(``agents.gateway.services``), so budgets, the allowlist, approvals and the kill switch apply to
MCP agents exactly as to HTTP ones. docs/mcp.md is the guide."""
