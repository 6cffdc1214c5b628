#!/usr/bin/env bash
# One-time AWS setup for cluster/aws-gpu.yaml. Safe to run again: it creates what is missing and
# re-applies the bucket policies.
#
#   AWS_REGION=us-west-2 TINYMEM_BUCKET=my-sweeps SSH_SOURCE_CIDR=203.0.113.7/32 cluster/aws-setup.sh
#
# Creates, in the region's default VPC:
#   * security group `tinymem-sweeps-ray`: all traffic between members of the group (Ray's GCS,
#     raylets, object managers, workers, dashboard agents) and TCP 22 from SSH_SOURCE_CIDR. Nothing
#     else is opened: no Ray port faces the internet.
#   * instance profile `tinymem-ray-worker`: read/write objects in the sweep bucket only.
#   * instance profile `tinymem-ray-head`: the same bucket access, EC2 (the autoscaler launches and
#     terminates workers) and iam:PassRole for the worker role only.
set -euo pipefail

: "${AWS_REGION:?set AWS_REGION (must equal provider.region in cluster/aws-gpu.yaml)}"
: "${TINYMEM_BUCKET:?set TINYMEM_BUCKET to the S3 bucket name used for --storage (name only, no s3://)}"
: "${SSH_SOURCE_CIDR:?set SSH_SOURCE_CIDR to the range allowed to SSH into the nodes, e.g. your IP/32}"

case "$SSH_SOURCE_CIDR" in
  0.0.0.0/0 | ::/0)
    echo "SSH_SOURCE_CIDR=$SSH_SOURCE_CIDR would open SSH to the whole internet; use your own range." >&2
    exit 1 ;;
esac

SG_NAME=tinymem-sweeps-ray       # provider.security_group.GroupName in aws-gpu.yaml
HEAD=tinymem-ray-head            # IamInstanceProfile of the head node type
WORKER=tinymem-ray-worker        # IamInstanceProfile of the GPU worker node types

ec2() { aws ec2 --region "$AWS_REGION" "$@"; }

# --- security group ------------------------------------------------------------------------------
vpc_id=$(ec2 describe-vpcs --filters Name=is-default,Values=true --query 'Vpcs[0].VpcId' --output text)
if [ "$vpc_id" = "None" ] || [ -z "$vpc_id" ]; then
  echo "No default VPC in $AWS_REGION; create one (aws ec2 create-default-vpc) or adapt this script." >&2
  exit 1
fi

sg_id=$(ec2 describe-security-groups \
  --filters Name=vpc-id,Values="$vpc_id" Name=group-name,Values="$SG_NAME" \
  --query 'SecurityGroups[0].GroupId' --output text)
if [ "$sg_id" = "None" ] || [ -z "$sg_id" ]; then
  sg_id=$(ec2 create-security-group --vpc-id "$vpc_id" --group-name "$SG_NAME" \
    --description "tinymem Ray cluster: intra-cluster traffic and SSH only" \
    --query GroupId --output text)
  # Every protocol and port, but only from instances in this same group.
  ec2 authorize-security-group-ingress --group-id "$sg_id" \
    --ip-permissions "IpProtocol=-1,UserIdGroupPairs=[{GroupId=$sg_id}]" > /dev/null
  ec2 authorize-security-group-ingress --group-id "$sg_id" \
    --protocol tcp --port 22 --cidr "$SSH_SOURCE_CIDR" > /dev/null
  echo "created security group $SG_NAME ($sg_id) in $vpc_id"
else
  echo "security group $SG_NAME exists ($sg_id); its rules are left as they are"
fi

# --- IAM roles and instance profiles --------------------------------------------------------------
account=$(aws sts get-caller-identity --query Account --output text)

trust_policy='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}'

bucket_policy=$(cat <<EOF
{"Version":"2012-10-17","Statement":[
  {"Effect":"Allow","Action":["s3:ListBucket","s3:GetBucketLocation"],
   "Resource":"arn:aws:s3:::${TINYMEM_BUCKET}"},
  {"Effect":"Allow","Action":["s3:GetObject","s3:PutObject","s3:DeleteObject","s3:AbortMultipartUpload"],
   "Resource":"arn:aws:s3:::${TINYMEM_BUCKET}/*"}]}
EOF
)

pass_worker_role_policy=$(cat <<EOF
{"Version":"2012-10-17","Statement":[
  {"Effect":"Allow","Action":"iam:PassRole","Resource":"arn:aws:iam::${account}:role/${WORKER}"}]}
EOF
)

for role in "$HEAD" "$WORKER"; do
  if ! aws iam get-role --role-name "$role" > /dev/null 2>&1; then
    aws iam create-role --role-name "$role" --assume-role-policy-document "$trust_policy" > /dev/null
    echo "created role $role"
  fi
  aws iam put-role-policy --role-name "$role" --policy-name tinymem-sweep-bucket \
    --policy-document "$bucket_policy"
  if ! aws iam get-instance-profile --instance-profile-name "$role" > /dev/null 2>&1; then
    aws iam create-instance-profile --instance-profile-name "$role" > /dev/null
    aws iam add-role-to-instance-profile --instance-profile-name "$role" --role-name "$role"
    echo "created instance profile $role"
  fi
done

# The head's autoscaler launches and terminates EC2 instances (the same managed policy Ray's default
# head role uses) and attaches the worker profile to the instances it launches.
aws iam attach-role-policy --role-name "$HEAD" --policy-arn arn:aws:iam::aws:policy/AmazonEC2FullAccess
aws iam put-role-policy --role-name "$HEAD" --policy-name tinymem-pass-worker-role \
  --policy-document "$pass_worker_role_policy"

echo "done. New instance profiles can take a few seconds to become usable by EC2."
