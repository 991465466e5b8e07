// The calls a platform team makes, typed by the client generated from the console's OpenAPI
// schema (`openapi-typescript` + `openapi-fetch`). Compiled with `tsc --strict --noEmit` by
// .ci/openapi-typescript; never run. Each `@ts-expect-error` is a call the schema must refuse:
// if the schema grew vaguer (a decision typed as any string, a required field made optional),
// the expected error would vanish and the compile would fail.
import createClient from "openapi-fetch";
import type { components, paths } from "./schema";

type Run = components["schemas"]["Run"];
type StopReason = components["schemas"]["StopReason"];
type ToolCallDecision = components["schemas"]["ToolCallDecision"];
type ApiError = components["schemas"]["Error"];

const base = "https://console.example.com";
const agent = createClient<paths>({ baseUrl: base, headers: { Authorization: "Bearer aok_x" } });
const person = createClient<paths>({ baseUrl: base, headers: { Authorization: "Bearer aou_x" } });

function fail(error: ApiError | undefined): never {
  throw new Error(`${error?.error}: ${JSON.stringify(error?.detail)} ${error?.stop_reason ?? ""}`);
}

export async function governedRun(): Promise<StopReason | null> {
  // A run without agent_version (optional on the server, optional in the schema).
  const started = await agent.POST("/api/v1/runs", { body: { task: "triage ticket 42" } });
  if (!started.data) fail(started.error);
  const run: Run = started.data;
  const status: "running" | "waiting_approval" | "succeeded" | "failed" | "stopped" = run.status;

  // @ts-expect-error a run needs a task
  await agent.POST("/api/v1/runs", { body: { agent_version: "v1" } });

  const step = await agent.POST("/api/v1/runs/{run_id}/steps", {
    params: { path: { run_id: run.id } },
    body: { model: "small", tokens_in: 120, tokens_out: 30, usd: 0.001 },
  });
  if (!step.data) fail(step.error);
  const next: "continue" | "stop" = step.data.decision;
  if (next === "stop") return step.data.stop_reason;

  const call = await agent.POST("/api/v1/runs/{run_id}/tool-calls", {
    params: { path: { run_id: run.id } },
    body: { tool: "kb.read", args: { q: "refund policy" }, idempotency_key: "call_1" },
  });
  if (!call.data) fail(call.error);
  const decision: ToolCallDecision = call.data.decision;
  // @ts-expect-error "maybe" is not a decision
  if (decision === "maybe") return null;
  switch (decision) {
    case "allow": {
      const result = await agent.POST("/api/v1/tool-calls/{tool_call_id}/result", {
        params: { path: { tool_call_id: call.data.id ?? 0 } },
        body: { ok: true, output: { hits: ["kb-12"] } },
      });
      if (!result.data) fail(result.error);
      break;
    }
    case "pending_approval": {
      const approvalId: number | undefined = call.data.approval?.id;
      const waited = await agent.GET("/api/v1/tool-calls/{tool_call_id}", {
        params: { path: { tool_call_id: call.data.id ?? 0 }, query: { wait: 30 } },
      });
      if (!waited.data) fail(waited.error);
      if (waited.data.decision !== "allow") return waited.data.stop_reason;
      void approvalId;
      break;
    }
    case "stop": {
      const reason: StopReason | null = call.data.stop_reason;
      return reason;
    }
    default:
      // A decision this agent does not act on (e.g. a refused call): the tool is not called.
      return call.data.stop_reason;
  }
  const finished = await agent.POST("/api/v1/runs/{run_id}/finish", {
    params: { path: { run_id: run.id } },
    body: { status: "succeeded", answer: "refunded" },
  });
  if (!finished.data) fail(finished.error);
  void status;
  return finished.data.stop_reason;
}

export async function stoppedRunsOfTheWeek(): Promise<Run[]> {
  const runs: Run[] = [];
  let after: string | undefined;
  do {
    const page = await person.GET("/api/v1/runs", {
      params: {
        query: { status: "stopped", stop_reason: "tool_denied", range: "7d", limit: 200, after },
      },
    });
    if (!page.data) fail(page.error);
    runs.push(...page.data.results);
    after = page.data.next_after ?? undefined;
  } while (after);
  // @ts-expect-error not a run status
  await person.GET("/api/v1/runs", { params: { query: { status: "exploded" } } });
  return runs;
}

export async function newAgentWithAKey(): Promise<string> {
  const created = await person.POST("/api/v1/agents", {
    body: { name: "billing-bot", tools: ["kb.read"] },
  });
  if (!created.data) fail(created.error);
  const issued = await person.POST("/api/v1/agents/{name}/keys", {
    params: { path: { name: created.data.name } },
    body: { label: "ci" },
  });
  if (!issued.data) fail(issued.error);
  const agents = await person.GET("/api/v1/agents");
  if (!agents.data) fail(agents.error);
  const spend: number = agents.data.results[0].spend.last_day;
  void spend;
  const disabled = await person.PUT("/api/v1/agents/{name}/enabled", {
    params: { path: { name: "billing-bot" } },
    body: { enabled: false, reason: "rotating keys" },
  });
  if (!disabled.data) fail(disabled.error);
  const revoked = await person.POST("/api/v1/agent-keys/{key_id}/revoke", {
    params: { path: { key_id: issued.data.id } },
  });
  if (!revoked.data) fail(revoked.error);
  return issued.data.key;
}

export async function policyAsCode(yaml: string): Promise<number> {
  const current = await person.GET("/api/v1/policy");
  if (!current.data) fail(current.error);
  const dryRun = await person.POST("/api/v1/policy/dry-run", { body: { yaml } });
  if (!dryRun.data) fail(dryRun.error);
  if (dryRun.data.stopped > 0) {
    const why: string[] = dryRun.data.runs.flatMap((run) => run.differences);
    throw new Error(`would stop ${dryRun.data.stopped} of ${dryRun.data.replayed}: ${why}`);
  }
  const published = await person.POST("/api/v1/policy", {
    body: { yaml, reason: "from the policy repository", base_version: current.data.version },
  });
  if (published.response.status === 409) {
    // policy_changed: someone published since; read it again and merge.
    fail(published.error);
  }
  if (!published.data) fail(published.error);
  // @ts-expect-error a publish names the version it was based on
  await person.POST("/api/v1/policy", { body: { yaml, reason: "blind overwrite" } });
  return published.data.version;
}
