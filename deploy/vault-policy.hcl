# Least-privilege Vault policy for mtls-gateway with the default mount (`secret`) and prefix
# (`mtls-gateway`). Change both path prefixes together if you change them in the config.
#
# data/     the secrets: P12 bytes and passwords, mappings, name and key claims
# metadata/ custom metadata (non-secret certificate facts), listings, versions of `revision`
#           and `sequence`, and deleting an entry with all its versions

path "secret/data/mtls-gateway/*" {
  capabilities = ["create", "read", "update", "delete"]
}

path "secret/metadata/mtls-gateway/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}
