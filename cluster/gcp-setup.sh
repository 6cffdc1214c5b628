#!/usr/bin/env bash
# One-time Google Cloud setup for cluster/gcp-gpu.yaml. Safe to run again: it creates what is missing.
#
#   GCP_PROJECT=my-project TINYMEM_BUCKET=my-sweeps SSH_SOURCE_CIDR=203.0.113.7/32 cluster/gcp-setup.sh
#
# Creates:
#   * VPC network `tinymem-ray` (custom mode) with subnet `tinymem-ray` (10.42.0.0/20) in GCP_REGION.
#   * firewall `tinymem-ray-internal`: all traffic between instances tagged `tinymem-ray`.
#   * firewall `tinymem-ray-ssh`: TCP 22 from SSH_SOURCE_CIDR to instances tagged `tinymem-ray`.
#     Every other ingress hits the network's implied deny rule: no Ray port faces the internet.
#   * service account `tinymem-ray-worker`, allowed to read and write objects in the sweep bucket.
# The head runs as Ray's own `ray-autoscaler-sa-v1`, which `ray up` creates.
set -euo pipefail

: "${GCP_PROJECT:?set GCP_PROJECT to your project id}"
: "${TINYMEM_BUCKET:?set TINYMEM_BUCKET to the GCS bucket name used for --storage (name only, no gs://)}"
: "${SSH_SOURCE_CIDR:?set SSH_SOURCE_CIDR to the range allowed to SSH into the nodes, e.g. your IP/32}"
GCP_REGION="${GCP_REGION:-us-central1}"   # must equal provider.region in cluster/gcp-gpu.yaml

case "$SSH_SOURCE_CIDR" in
  0.0.0.0/0 | ::/0)
    echo "SSH_SOURCE_CIDR=$SSH_SOURCE_CIDR would open SSH to the whole internet; use your own range." >&2
    exit 1 ;;
esac

NAME=tinymem-ray                  # network, subnet and network tag
WORKER_SA=tinymem-ray-worker
WORKER_SA_EMAIL="${WORKER_SA}@${GCP_PROJECT}.iam.gserviceaccount.com"

g() { gcloud --project "$GCP_PROJECT" --quiet "$@"; }

if ! g compute networks describe "$NAME" > /dev/null 2>&1; then
  g compute networks create "$NAME" --subnet-mode=custom
fi
if ! g compute networks subnets describe "$NAME" --region "$GCP_REGION" > /dev/null 2>&1; then
  g compute networks subnets create "$NAME" --network "$NAME" --region "$GCP_REGION" \
    --range 10.42.0.0/20
fi
if ! g compute firewall-rules describe "${NAME}-internal" > /dev/null 2>&1; then
  g compute firewall-rules create "${NAME}-internal" --network "$NAME" --direction INGRESS \
    --action ALLOW --rules all --source-tags "$NAME" --target-tags "$NAME"
fi
if ! g compute firewall-rules describe "${NAME}-ssh" > /dev/null 2>&1; then
  g compute firewall-rules create "${NAME}-ssh" --network "$NAME" --direction INGRESS \
    --action ALLOW --rules tcp:22 --source-ranges "$SSH_SOURCE_CIDR" --target-tags "$NAME"
fi

if ! g iam service-accounts describe "$WORKER_SA_EMAIL" > /dev/null 2>&1; then
  g iam service-accounts create "$WORKER_SA" --display-name "tinymem Ray GPU workers"
fi
g storage buckets add-iam-policy-binding "gs://${TINYMEM_BUCKET}" \
  --member "serviceAccount:${WORKER_SA_EMAIL}" --role roles/storage.objectAdmin > /dev/null

echo "done. In cluster/gcp-gpu.yaml set provider.project_id: ${GCP_PROJECT} and replace YOUR_PROJECT_ID."
