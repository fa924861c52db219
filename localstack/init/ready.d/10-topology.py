"""LocalStack ready hook: the compose stack's topology, created once LocalStack serves requests.

    SNS topic orders ──> SQS orders (RedrivePolicy: maxReceiveCount 8 ──> orders-dlq)
        └─ subscription RedrivePolicy ──> SQS orders-sns-dlq (what SNS could not deliver to orders)
    SQS orders-confirmed                     (on-success destination)
    S3 orders-failures                       (on-failure records, under failed/)
    SNS orders-alerts ──> SQS orders-alerts-inbox (raw delivery; on-failure alerts, kept 1 hour)
    SQS orders.fifo (RedrivePolicy ──> orders-dlq.fifo)   (a FIFO pair to point a second worker at)

docker-compose.yml mounts this directory at /etc/localstack/init/ready.d; LocalStack runs ``.py`` hooks
with ``exec`` inside its own process (boto3 is there), and its healthcheck reports healthy only once this
script has succeeded, so the worker never starts against a missing queue. Idempotent: a rerun keeps
what exists. tests/test_deploy_compose_stack.py runs it the same way in an embedded LocalStack, and checks
the orders part with `worker topology --check --topic orders --queue orders --max-receive-count 8` (the
same topology `worker topology` creates: LocalStack's image has boto3 but not the worker, hence this copy).
"""

import json
import os

import boto3

REGION = "us-east-1"
ACCOUNT = "000000000000"
PREFIX = "orders"
#: Above the compose worker's WORKER_MAX_ATTEMPTS (5): the broker's redrive only catches a dead worker.
MAX_RECEIVE_COUNT = 8


def _endpoint():
    # GATEWAY_LISTEN is LocalStack's own listen address (0.0.0.0:4566 in the container).
    listen = os.environ.get("GATEWAY_LISTEN", "").split(",")[0].strip() or "0.0.0.0:4566"
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):  # noqa: S104 - a listen address, not a bind
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def _client(service):
    return boto3.client(
        service,
        endpoint_url=_endpoint(),
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",  # noqa: S106 - LocalStack's dummy credentials
    )


def _queue(sqs, name, **attributes):
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def _allow_topic(sqs, url, queue_arn, topic_arn):
    # What AWS requires for an SNS subscription (LocalStack does not check it; kept so the
    # topology reads the same as a real one).
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
            }
        ],
    }
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})


def create_topology():
    """Create (or keep) every resource of the compose stack."""
    sqs, sns, s3 = _client("sqs"), _client("sns"), _client("s3")

    _, dlq_arn = _queue(sqs, f"{PREFIX}-dlq", MessageRetentionPeriod="1209600")
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVE_COUNT})
    queue_url, queue_arn = _queue(sqs, PREFIX, RedrivePolicy=redrive, VisibilityTimeout="60")
    _queue(sqs, f"{PREFIX}-confirmed", MessageRetentionPeriod="3600")
    topic_arn = sns.create_topic(Name=PREFIX)["TopicArn"]
    _allow_topic(sqs, queue_url, queue_arn, topic_arn)
    # The subscription's own DLQ: deliveries SNS gives up on (queue deleted, policy or KMS refusing SNS).
    sns_dlq_url, sns_dlq_arn = _queue(sqs, f"{PREFIX}-sns-dlq", MessageRetentionPeriod="1209600")
    _allow_topic(sqs, sns_dlq_url, sns_dlq_arn, topic_arn)
    sns.subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={
            "RawMessageDelivery": "false",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": sns_dlq_arn}),
        },
    )

    alerts_arn = sns.create_topic(Name=f"{PREFIX}-alerts")["TopicArn"]
    inbox_url, inbox_arn = _queue(sqs, f"{PREFIX}-alerts-inbox", MessageRetentionPeriod="3600")
    _allow_topic(sqs, inbox_url, inbox_arn, alerts_arn)
    sns.subscribe(
        TopicArn=alerts_arn, Protocol="sqs", Endpoint=inbox_arn, Attributes={"RawMessageDelivery": "true"}
    )

    s3.create_bucket(Bucket=f"{PREFIX}-failures")

    fifo = {"FifoQueue": "true", "ContentBasedDeduplication": "false"}
    _, fifo_dlq_arn = _queue(sqs, f"{PREFIX}-dlq.fifo", **fifo)
    fifo_redrive = json.dumps({"deadLetterTargetArn": fifo_dlq_arn, "maxReceiveCount": MAX_RECEIVE_COUNT})
    _queue(sqs, f"{PREFIX}.fifo", RedrivePolicy=fifo_redrive, VisibilityTimeout="60", **fifo)
    print(f"topology ready: topic {topic_arn} -> queue {queue_url} -> DLQ {dlq_arn}", flush=True)


# LocalStack exec()s this file with empty globals (no __name__): run unconditionally.
create_topology()
