{{/* Names and labels. */}}
{{- define "mtls-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mtls-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mtls-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mtls-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mtls-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mtls-gateway.labels" -}}
helm.sh/chart: {{ include "mtls-gateway.chart" . }}
{{ include "mtls-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mtls-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mtls-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mtls-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Where the mounted files live inside the container. */}}
{{- define "mtls-gateway.configDir" -}}/etc/mtls-gateway{{- end }}
{{- define "mtls-gateway.vaultAuthDir" -}}/var/run/secrets/mtls-gateway/vault-auth{{- end }}
{{- define "mtls-gateway.vaultCaDir" -}}/var/run/secrets/mtls-gateway/vault-ca{{- end }}

{{/*
The gateway's configuration file, rendered from values. The chart's keys (store, listeners,
runtime dir, auth) win over the same keys in .Values.config; everything else in .Values.config
is passed through.
*/}}
{{- define "mtls-gateway.config" -}}
{{- if not .Values.auth.enabled }}
{{- fail "auth.enabled must stay true: the admin listener binds to 0.0.0.0 (the Service, or the kubelet's probes in sidecar mode) and the gateway refuses to start with authentication off on a non-loopback address" }}
{{- end }}
{{- $authDir := include "mtls-gateway.vaultAuthDir" . }}
{{- $storeAuth := dict }}
{{- if eq .Values.vault.auth.method "token" }}
{{- $storeAuth = dict "method" "token" "token_file" (printf "%s/token" $authDir) }}
{{- else if eq .Values.vault.auth.method "approle" }}
{{- $storeAuth = dict "method" "approle" "mount" .Values.vault.auth.approle.mount "role_id_file" (printf "%s/role_id" $authDir) "secret_id_file" (printf "%s/secret_id" $authDir) }}
{{- else }}
{{- fail (printf "vault.auth.method must be token or approle, not %q" .Values.vault.auth.method) }}
{{- end }}
{{- $store := dict "kind" "vault" "address" (required "vault.address is required" .Values.vault.address) "mount" .Values.vault.mount "prefix" .Values.vault.prefix "request_timeout_seconds" (int .Values.vault.requestTimeoutSeconds) "auth" $storeAuth }}
{{- if .Values.vault.caSecret.name }}
{{- $_ := set $store "ca_file" (printf "%s/ca.crt" (include "mtls-gateway.vaultCaDir" .)) }}
{{- end }}
{{- $auth := dict "enabled" true "tokens" .Values.auth.tokens }}
{{- if .Values.auth.oauth1 }}
{{- $_ := set $auth "oauth1" .Values.auth.oauth1 }}
{{- end }}
{{- if .Values.auth.policy }}
{{- $_ := set $auth "policy" .Values.auth.policy }}
{{- end }}
{{- $proxyHost := ternary .Values.sidecar.proxyListen "0.0.0.0" .Values.sidecar.enabled }}
{{- $chartKeys := dict
      "store" $store
      "lifecycle" (dict "runtime_dir" .Values.runtimeDir)
      "proxy" (dict "listen" (printf "%s:%d" $proxyHost (int .Values.ports.proxy)))
      "admin" (dict "listen" (printf "0.0.0.0:%d" (int .Values.ports.admin)))
      "auth" $auth }}
{{- $config := mustMergeOverwrite (deepCopy (default dict .Values.config)) $chartKeys }}
{{- toYaml $config }}
{{- end }}

{{/* Pod volumes the gateway container needs. */}}
{{- define "mtls-gateway.volumes" -}}
- name: config
  configMap:
    name: {{ include "mtls-gateway.fullname" . }}
- name: runtime
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
- name: tmp
  emptyDir:
    sizeLimit: 16Mi
- name: vault-auth
  secret:
    defaultMode: 0440
{{- if eq .Values.vault.auth.method "token" }}
    secretName: {{ .Values.vault.auth.token.secretName }}
    items:
      - key: {{ .Values.vault.auth.token.key }}
        path: token
{{- else }}
    secretName: {{ .Values.vault.auth.approle.secretName }}
    items:
      - key: {{ .Values.vault.auth.approle.roleIdKey }}
        path: role_id
      - key: {{ .Values.vault.auth.approle.secretIdKey }}
        path: secret_id
{{- end }}
{{- if .Values.vault.caSecret.name }}
- name: vault-ca
  secret:
    secretName: {{ .Values.vault.caSecret.name }}
    items:
      - key: {{ .Values.vault.caSecret.key }}
        path: ca.crt
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The gateway container: the Deployment's, and the one in the sidecar example. */}}
{{- define "mtls-gateway.container" -}}
name: mtls-gateway
image: {{ include "mtls-gateway.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
args: ["run", "--config", "{{ include "mtls-gateway.configDir" . }}/config.yaml"]
ports:
  - name: mtls-proxy
    containerPort: {{ .Values.ports.proxy }}
    protocol: TCP
  - name: mtls-admin
    containerPort: {{ .Values.ports.admin }}
    protocol: TCP
{{- with .Values.extraEnv }}
env:
  {{- toYaml . | nindent 2 }}
{{- end }}
livenessProbe:
  {{- toYaml .Values.livenessProbe | nindent 2 }}
readinessProbe:
  {{- toYaml .Values.readinessProbe | nindent 2 }}
resources:
  {{- toYaml .Values.resources | nindent 2 }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
volumeMounts:
  - name: config
    mountPath: {{ include "mtls-gateway.configDir" . }}
    readOnly: true
  - name: runtime
    mountPath: {{ .Values.runtimeDir }}
  - name: tmp
    mountPath: /tmp
  - name: vault-auth
    mountPath: {{ include "mtls-gateway.vaultAuthDir" . }}
    readOnly: true
{{- if .Values.vault.caSecret.name }}
  - name: vault-ca
    mountPath: {{ include "mtls-gateway.vaultCaDir" . }}
    readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
