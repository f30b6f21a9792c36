{{/* The chart name, or nameOverride. */}}
{{- define "fluxgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<name>" (just the release when it contains the name), or fullnameOverride. */}}
{{- define "fluxgate.fullname" -}}
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

{{/* "<chart>-<version>", the helm.sh/chart label. */}}
{{- define "fluxgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "fluxgate.labels" -}}
helm.sh/chart: {{ include "fluxgate.chart" . }}
{{ include "fluxgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fluxgate
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels: name and instance only, never anything that changes on upgrade. */}}
{{- define "fluxgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fluxgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component's resources: (dict "root" $ "component" "front"). */}}
{{- define "fluxgate.componentLabels" -}}
{{ include "fluxgate.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selector of one component's pods: name, instance, component. */}}
{{- define "fluxgate.componentSelectorLabels" -}}
{{ include "fluxgate.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "fluxgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fluxgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest. */}}
{{- define "fluxgate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret with the credentials. */}}
{{- define "fluxgate.secretName" -}}
{{- default (printf "%s-secrets" (include "fluxgate.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{/* The HTTP port (/metrics, /healthz, /readyz) of a role. */}}
{{- define "fluxgate.httpPort" -}}
{{- if eq . "front" }}9101{{ else if eq . "api" }}8080{{ else }}9102{{ end }}
{{- end }}

{{/* The front serves TLS itself (from a Secret or a cert-manager Certificate). */}}
{{- define "fluxgate.frontTls" -}}
{{- if has .Values.front.tls.mode (list "secret" "certManager") }}true{{ end }}
{{- end }}

{{/* The Secret the front's certificate comes from. */}}
{{- define "fluxgate.frontTlsSecret" -}}
{{- if eq .Values.front.tls.mode "secret" }}
{{- required "front.tls.existingSecret: name the kubernetes.io/tls Secret of front.tls.mode secret" .Values.front.tls.existingSecret }}
{{- else }}
{{- printf "%s-front-tls" (include "fluxgate.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The container ports of the front's MQTT listeners: name -> container port. With TLS at the
load balancer, mqtts and wss lead to the plain listeners, which are then open.
*/}}
{{- define "fluxgate.frontListeners" -}}
{{- $l := .Values.front.listeners }}
{{- $tls := include "fluxgate.frontTls" . }}
{{- $lb := eq .Values.front.tls.mode "loadBalancer" }}
{{- $out := dict }}
{{- if or $l.mqtt.enabled (and $lb $l.mqtts.enabled) }}{{ $_ := set $out "mqtt" 1883 }}{{ end }}
{{- if or $l.ws.enabled (and $lb $l.wss.enabled) }}{{ $_ := set $out "ws" 8083 }}{{ end }}
{{- if and $tls $l.mqtts.enabled }}{{ $_ := set $out "mqtts" 8883 }}{{ end }}
{{- if and $tls $l.wss.enabled }}{{ $_ := set $out "wss" 8084 }}{{ end }}
{{- toJson $out }}
{{- end }}

{{/* Every check of values that the schema cannot express; each fails with what to do. */}}
{{- define "fluxgate.validate" -}}
{{- $f := .Values.front }}
{{- if and (or $f.listeners.mqtts.enabled $f.listeners.wss.enabled) (eq $f.tls.mode "none") }}
{{- fail "front.listeners.mqtts/wss need TLS: set front.tls.mode to secret, certManager or loadBalancer" }}
{{- end }}
{{- if and (eq $f.tls.mode "certManager") (not $f.tls.certManager.issuerRef.name) }}
{{- fail "front.tls.certManager.issuerRef.name: name the cert-manager Issuer or ClusterIssuer" }}
{{- end }}
{{- if and (eq $f.tls.mode "certManager") (not $f.tls.certManager.dnsNames) }}
{{- fail "front.tls.certManager.dnsNames: list the names devices connect to" }}
{{- end }}
{{- if and $f.enabled (eq (include "fluxgate.frontListeners" . ) "{}") }}
{{- fail "front.listeners: enable at least one of mqtt, mqtts, ws, wss" }}
{{- end }}
{{- if and $f.service.externalTrafficPolicy (not (has $f.service.type (list "LoadBalancer" "NodePort"))) }}
{{- fail (printf "front.service.externalTrafficPolicy is only for a LoadBalancer or NodePort Service, not %s (set on a ClusterIP Service it breaks upgrades)" $f.service.type) }}
{{- end }}
{{- $drain := int (default 10 (dig "front" "drain_grace_secs" 10 .Values.config)) }}
{{- $need := add (int $f.preStopSleepSeconds) $drain 5 }}
{{- if lt (int $f.terminationGracePeriodSeconds) (int $need) }}
{{- fail (printf "front.terminationGracePeriodSeconds is %d, shorter than front.preStopSleepSeconds (%d) + config.front.drain_grace_secs (%d) + 5: the kubelet would kill fronts mid-drain and lose in-flight acks; set it to at least %d" (int $f.terminationGracePeriodSeconds) (int $f.preStopSleepSeconds) $drain $need) }}
{{- end }}
{{- if and $f.autoscaling.enabled $f.autoscaling.targetCPUUtilizationPercentage (not (dig "requests" "cpu" "" $f.resources)) }}
{{- fail "front.autoscaling.targetCPUUtilizationPercentage needs front.resources.requests.cpu (the HPA measures utilization against the request)" }}
{{- end }}
{{- if and $f.autoscaling.enabled (not $f.autoscaling.targetCPUUtilizationPercentage) (not $f.autoscaling.connectionsPerPod) }}
{{- fail "front.autoscaling: set targetCPUUtilizationPercentage or connectionsPerPod (or both)" }}
{{- end }}
{{- if and $f.autoscaling.enabled (gt (int $f.autoscaling.minReplicas) (int $f.autoscaling.maxReplicas)) }}
{{- fail "front.autoscaling.minReplicas is above maxReplicas" }}
{{- end }}
{{- if not .Values.secrets.existingSecret }}
{{- if not .Values.secrets.bootstrapToken }}
{{- fail "secrets.bootstrapToken is required (the API's admin token; e.g. --set secrets.bootstrapToken=$(openssl rand -hex 24)), or name a Secret in secrets.existingSecret" }}
{{- end }}
{{- if not .Values.secrets.deviceTokenSecret }}
{{- fail "secrets.deviceTokenSecret is required (signs Losant device tokens; every API replica needs the same one), or name a Secret in secrets.existingSecret" }}
{{- end }}
{{- end }}
{{- $c := .Values.config }}
{{- range $path, $v := dict "api.bootstrap_token" (dig "api" "bootstrap_token" "" $c) "api.device_token_secret" (dig "api" "device_token_secret" "" $c) "bus.kafka.sasl_username" (dig "bus" "kafka" "sasl_username" "" $c) "bus.kafka.sasl_password" (dig "bus" "kafka" "sasl_password" "" $c) "store.scylla.username" (dig "store" "scylla" "username" "" $c) "store.scylla.password" (dig "store" "scylla" "password" "" $c) }}
{{- if $v }}
{{- fail (printf "config.%s: credentials go in secrets (or secrets.existingSecret), not in the ConfigMap" $path) }}
{{- end }}
{{- end }}
{{- range $k, $want := dict "bus" "kafka" "store" "scylla" }}
{{- $kind := dig $k "kind" $want $.Values.config }}
{{- if ne $kind $want }}
{{- fail (printf "config.%s.kind: the chart runs every role as its own Deployment, which needs %s (not %s)" $k $want $kind) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
fluxgate.toml: config from values, with what the chart decides set over it. Rendered by
fluxgate.toml.table rather than toToml, which prints every number from values as a float
(6.0) that the binary rightly refuses for an integer setting.
*/}}
{{- define "fluxgate.configToml" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $ports := include "fluxgate.frontListeners" . | fromJson }}
{{- $front := dict
  "http_addr" "0.0.0.0:9101"
  "tcp_addr" (hasKey $ports "mqtt" | ternary "0.0.0.0:1883" "")
  "ws_addr" (hasKey $ports "ws" | ternary "0.0.0.0:8083" "")
  "tls_addr" (hasKey $ports "mqtts" | ternary "0.0.0.0:8883" "")
  "wss_addr" (hasKey $ports "wss" | ternary "0.0.0.0:8084" "") }}
{{- if include "fluxgate.frontTls" . }}
{{- $_ := set $front "tls" (dict "cert_path" "/etc/fluxgate/tls/tls.crt" "key_path" "/etc/fluxgate/tls/tls.key") }}
{{- end }}
{{- $chart := dict
  "metrics_addr" "0.0.0.0:9102"
  "bus" (dict "kind" "kafka")
  "store" (dict "kind" "scylla")
  "api" (dict "http_addr" "0.0.0.0:8080")
  "front" $front }}
{{- $cfg = mergeOverwrite $cfg $chart }}
{{- include "fluxgate.toml.table" (dict "table" $cfg "path" "") }}
{{- end }}

{{/* A TOML key or table-path segment: bare when it can be, quoted otherwise. */}}
{{- define "fluxgate.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/* A TOML value: integral numbers as integers, strings and arrays as JSON (valid TOML). */}}
{{- define "fluxgate.toml.value" -}}
{{- if kindIs "float64" . }}
{{- if eq . (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if kindIs "bool" . }}{{ . }}
{{- else if or (kindIs "int" .) (kindIs "int64" .) }}{{ . }}
{{- else }}{{ toJson . }}
{{- end }}
{{- end }}

{{/* (dict "table" map "path" "a.b"): the keys of the table, then its sub-tables. Nulls are left out (a setting's default). */}}
{{- define "fluxgate.toml.table" -}}
{{- $path := .path }}
{{- range $k, $v := .table }}
{{- if and (not (kindIs "map" $v)) (not (kindIs "invalid" $v)) }}
{{ include "fluxgate.toml.key" $k }} = {{ include "fluxgate.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := .table }}
{{- if kindIs "map" $v }}
{{- $p := include "fluxgate.toml.key" $k }}
{{- if $path }}{{ $p = printf "%s.%s" $path $p }}{{ end }}

[{{ $p }}]
{{- include "fluxgate.toml.table" (dict "table" $v "path" $p) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The environment of every fluxgate container: the config file and the credentials. */}}
{{- define "fluxgate.env" -}}
{{- $secret := include "fluxgate.secretName" .root -}}
- name: FLUXGATE_CONFIG
  value: /etc/fluxgate/fluxgate.toml
{{- if eq .component "front" }}
# Every front needs its own id: the dispatcher routes a device's commands to it by this.
- name: FLUXGATE_FRONT__INSTANCE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}
{{- if eq .component "api" }}
- name: FLUXGATE_API__BOOTSTRAP_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: bootstrap-token
- name: FLUXGATE_API__DEVICE_TOKEN_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: device-token-secret
{{- end }}
{{- range $var, $key := dict "FLUXGATE_BUS__KAFKA__SASL_USERNAME" "kafka-sasl-username" "FLUXGATE_BUS__KAFKA__SASL_PASSWORD" "kafka-sasl-password" "FLUXGATE_STORE__SCYLLA__USERNAME" "scylla-username" "FLUXGATE_STORE__SCYLLA__PASSWORD" "scylla-password" }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $.secret | default $secret }}
      key: {{ $key }}
      optional: true
{{- end }}
{{- with .values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The Secret's data: (dict "values" .Values.secrets "all" bool); all: false gives only what migrate needs. */}}
{{- define "fluxgate.secretData" -}}
{{- $s := .values }}
{{- $keys := dict "kafka-sasl-username" $s.kafkaSaslUsername "kafka-sasl-password" $s.kafkaSaslPassword "scylla-username" $s.scyllaUsername "scylla-password" $s.scyllaPassword }}
{{- if .all }}
{{- $_ := set $keys "bootstrap-token" $s.bootstrapToken }}
{{- $_ := set $keys "device-token-secret" $s.deviceTokenSecret }}
{{- end }}
{{- range $k, $v := $keys }}
{{- if $v }}
{{ $k }}: {{ $v | b64enc | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Annotations of the migrate hook's objects: (dict "root" $ "weight" "-10"). */}}
{{- define "fluxgate.hookAnnotations" -}}
{{- if .root.Values.migrate.argocd -}}
argocd.argoproj.io/hook: PreSync
argocd.argoproj.io/hook-delete-policy: BeforeHookCreation,HookSucceeded
argocd.argoproj.io/sync-wave: {{ .weight | quote }}
{{- else -}}
helm.sh/hook: pre-install,pre-upgrade
helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
helm.sh/hook-weight: {{ .weight | quote }}
{{- end }}
{{- end }}
