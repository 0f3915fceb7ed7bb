{{/*
Names. The release's prefix ("omnimesh" when the release is called omnimesh) and each
component's full name: <prefix>-core-engine, <prefix>-proxy-gateway, ...
*/}}
{{- define "omnimesh.prefix" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The components: values key, binary name, ports, workload kind. */}}
{{- define "omnimesh.components" -}}
coreEngine:
  name: core-engine
  port: 50051
  portName: grpc
  appProtocol: grpc
  healthPort: 50051
  rollout: true
proxyGateway:
  name: proxy-gateway
  port: 8080
  portName: http
  appProtocol: http
  adminPort: 9901
  healthPort: 9901
  rollout: true
meshController:
  name: mesh-controller
  port: 50052
  portName: grpc
  appProtocol: grpc
  healthPort: 50052
  rollout: false
omnitermInterface:
  name: omniterm-interface
  port: 50053
  portName: http
  appProtocol: http
  healthPort: 50053
  rollout: false
{{- end -}}

{{/* The component dict for a values key: include "omnimesh.component" (list $ "coreEngine") */}}
{{- define "omnimesh.component" -}}
{{- $root := index . 0 -}}
{{- $key := index . 1 -}}
{{- $all := include "omnimesh.components" $root | fromYaml -}}
{{- index $all $key | toYaml -}}
{{- end -}}

{{/* Full name of a component by binary name: include "omnimesh.fullname" (list $ "core-engine") */}}
{{- define "omnimesh.fullname" -}}
{{- printf "%s-%s" (include "omnimesh.prefix" (index . 0)) (index . 1) -}}
{{- end -}}

{{/* The in-cluster DNS name of a component's Service. */}}
{{- define "omnimesh.host" -}}
{{- $root := index . 0 -}}
{{- printf "%s.%s.svc.%s" (include "omnimesh.fullname" .) $root.Release.Namespace $root.Values.global.clusterDomain -}}
{{- end -}}

{{/* The SPIFFE principal of a component's ServiceAccount. */}}
{{- define "omnimesh.principal" -}}
{{- $root := index . 0 -}}
{{- printf "%s/ns/%s/sa/%s" $root.Values.global.trustDomain $root.Release.Namespace (include "omnimesh.fullname" .) -}}
{{- end -}}

{{- define "omnimesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object of a component. */}}
{{- define "omnimesh.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "omnimesh.chart" $root }}
{{ include "omnimesh.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: omnimesh
{{- end -}}

{{/* Labels that select a component's pods. */}}
{{- define "omnimesh.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ index . 1 }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
{{- end -}}

{{/* Labels of objects that belong to the whole release. */}}
{{- define "omnimesh.releaseLabels" -}}
helm.sh/chart: {{ include "omnimesh.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: omnimesh
{{- end -}}

{{/* A service's settings: the shared defaults overridden by its own section. */}}
{{- define "omnimesh.settings" -}}
{{- $root := index . 0 -}}
{{- $key := index . 1 -}}
{{- mergeOverwrite (deepCopy $root.Values.defaults) (deepCopy (index $root.Values $key)) | toYaml -}}
{{- end -}}

{{/* registry/repository:tag */}}
{{- define "omnimesh.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- $registry := $root.Values.global.imageRegistry -}}
{{- if or (eq $registry "") (contains "/" $image.repository) -}}
{{- printf "%s:%s" $image.repository $image.tag -}}
{{- else -}}
{{- printf "%s/%s:%s" $registry $image.repository $image.tag -}}
{{- end -}}
{{- end -}}

{{- define "omnimesh.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else -}}
{{- printf "%s-keys" (include "omnimesh.prefix" .) -}}
{{- end -}}
{{- end -}}

{{/*
A PostgreSQL URL; the password comes from $(OMNIMESH_PG_PASSWORD), set just before. TLS as
postgresql.sslMode says, against the CA of postgresql.caSecret when there is one.
*/}}
{{- define "omnimesh.postgresUrl" -}}
{{- $root := index . 0 -}}
{{- $pg := $root.Values.postgresql -}}
{{- printf "postgres://%s:$(OMNIMESH_PG_PASSWORD)@%s:%d/%s?sslmode=%s" $pg.user $pg.host (int $pg.port) (index . 1) $pg.sslMode -}}
{{- if $pg.caSecret -}}
{{- printf "&sslrootcert=%s" (include "omnimesh.postgresCaFile" $root) -}}
{{- end -}}
{{- end -}}

{{/* Where postgresql.caSecret's ca.crt is mounted. */}}
{{- define "omnimesh.postgresCaFile" -}}
/etc/omnimesh/postgresql-ca/ca.crt
{{- end -}}

{{/*
The pod template of a component (Deployment and Rollout alike).
include "omnimesh.podTemplate" (list $ "coreEngine")
*/}}
{{- define "omnimesh.podTemplate" -}}
{{- $root := index . 0 -}}
{{- $key := index . 1 -}}
{{- $c := include "omnimesh.component" . | fromYaml -}}
{{- $s := include "omnimesh.settings" . | fromYaml -}}
{{- $name := include "omnimesh.fullname" (list $root $c.name) -}}
metadata:
  labels:
    {{- include "omnimesh.selectorLabels" (list $root $c.name) | nindent 4 }}
    app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
    app.kubernetes.io/part-of: omnimesh
    {{- /* Istio's canonical revision: what the analysis queries tell canary from stable by. */}}
    service.istio.io/canonical-name: {{ $c.name }}
    service.istio.io/canonical-revision: {{ $s.image.tag | quote }}
    {{- with $s.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    {{- if $root.Values.istio.enabled }}
    {{- /* The sidecar starts first and stops last, so no call leaves before it is ready. */}}
    proxy.istio.io/config: '{"holdApplicationUntilProxyStarts": true, "terminationDrainDuration": "20s"}'
    {{- end }}
    {{- with $s.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ $name }}
  automountServiceAccountToken: {{ eq $c.name "mesh-controller" }}
  {{- with $root.Values.global.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $s.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ $s.terminationGracePeriodSeconds }}
  {{- if $s.topologySpread.enabled }}
  topologySpreadConstraints:
    {{- range $s.topologySpread.topologyKeys }}
    - maxSkew: {{ $s.topologySpread.maxSkew }}
      topologyKey: {{ . }}
      whenUnsatisfiable: {{ $s.topologySpread.whenUnsatisfiable }}
      labelSelector:
        matchLabels:
          {{- include "omnimesh.selectorLabels" (list $root $c.name) | nindent 10 }}
    {{- end }}
  {{- end }}
  {{- with $s.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $s.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $s.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ $c.name }}
      image: {{ include "omnimesh.image" (list $root $s.image) | quote }}
      imagePullPolicy: {{ $s.image.pullPolicy }}
      {{- if eq $c.name "mesh-controller" }}
      args: [serve]
      {{- end }}
      ports:
        - name: {{ $c.portName }}
          containerPort: {{ $c.port }}
          protocol: TCP
        {{- if $c.adminPort }}
        - name: http-admin
          containerPort: {{ $c.adminPort }}
          protocol: TCP
        {{- end }}
      env:
        - name: OMNIMESH_CONFIG
          value: /etc/omnimesh/omnimesh.toml
        {{- if or (eq $c.name "core-engine") (eq $c.name "mesh-controller") }}
        - name: OMNIMESH_PG_PASSWORD
          valueFrom:
            secretKeyRef:
              name: {{ $root.Values.postgresql.existingSecret }}
              key: {{ $root.Values.postgresql.passwordKey }}
        {{- end }}
        {{- if eq $c.name "core-engine" }}
        - name: OMNIMESH_CORE_ENGINE__KEYS__DATABASE_URL
          value: {{ include "omnimesh.postgresUrl" (list $root $root.Values.postgresql.engineDatabase) | quote }}
        {{- end }}
        {{- if eq $c.name "mesh-controller" }}
        - name: OMNIMESH_MESH_CONTROLLER__EVENTS__DATABASE_URL
          value: {{ include "omnimesh.postgresUrl" (list $root $root.Values.postgresql.controllerDatabase) | quote }}
        {{- end }}
        {{- if and (eq $c.name "proxy-gateway") $root.Values.redis.enabled }}
        - name: OMNIMESH_PROXY_GATEWAY__REDIS__URL
          {{- if $root.Values.redis.existingSecret }}
          valueFrom:
            secretKeyRef:
              name: {{ $root.Values.redis.existingSecret }}
              key: url
          {{- else }}
          value: {{ $root.Values.redis.url | quote }}
          {{- end }}
        {{- end }}
        {{- with $s.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: {{ $c.healthPort }}
        {{- toYaml $s.probes.liveness | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: {{ $c.healthPort }}
        {{- toYaml $s.probes.readiness | nindent 8 }}
      startupProbe:
        grpc:
          port: {{ $c.healthPort }}
        {{- toYaml $s.probes.startup | nindent 8 }}
      resources:
        {{- toYaml $s.resources | nindent 8 }}
      securityContext:
        {{- toYaml $s.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/omnimesh/omnimesh.toml
          subPath: omnimesh.toml
          readOnly: true
        {{- if ne $c.name "omniterm-interface" }}
        - name: keys
          mountPath: /etc/omnimesh/secrets
          readOnly: true
        {{- end }}
        {{- if and $root.Values.auth.jwksConfigMap (or (eq $c.name "proxy-gateway") (eq $c.name "mesh-controller")) }}
        - name: jwks
          mountPath: /etc/omnimesh/jwks
          readOnly: true
        {{- end }}
        {{- if and $root.Values.postgresql.caSecret (or (eq $c.name "core-engine") (eq $c.name "mesh-controller")) }}
        - name: postgresql-ca
          mountPath: {{ include "omnimesh.postgresCaFile" $root | dir }}
          readOnly: true
        {{- end }}
        - name: work
          mountPath: /var/lib/omnimesh
        - name: tmp
          mountPath: /tmp
      workingDir: /var/lib/omnimesh
  volumes:
    - name: config
      configMap:
        name: {{ include "omnimesh.prefix" $root }}-config
    {{- if ne $c.name "omniterm-interface" }}
    - name: keys
      secret:
        secretName: {{ include "omnimesh.secretName" $root }}
        defaultMode: 0440
        items:
          {{- if eq $c.name "core-engine" }}
          - key: master-key
            path: master-key
          {{- if $root.Values.secrets.previousMasterKeys }}
          - key: previous-master-keys
            path: previous-master-keys
          {{- end }}
          {{- else }}
          - key: jwt-hs256.key
            path: jwt-hs256.key
          {{- end }}
          {{- /* core-engine signs its key-change reports with it; the controller checks them. */}}
          {{- if or (eq $c.name "core-engine") (eq $c.name "mesh-controller") }}
          - key: engine-report.key
            path: engine-report.key
          {{- end }}
    {{- end }}
    {{- if and $root.Values.auth.jwksConfigMap (or (eq $c.name "proxy-gateway") (eq $c.name "mesh-controller")) }}
    - name: jwks
      configMap:
        name: {{ $root.Values.auth.jwksConfigMap }}
        items:
          - key: jwks.json
            path: jwks.json
    {{- end }}
    {{- if and $root.Values.postgresql.caSecret (or (eq $c.name "core-engine") (eq $c.name "mesh-controller")) }}
    - name: postgresql-ca
      secret:
        secretName: {{ $root.Values.postgresql.caSecret }}
        defaultMode: 0444
        items:
          - key: ca.crt
            path: {{ include "omnimesh.postgresCaFile" $root | base }}
    {{- end }}
    - name: work
      emptyDir:
        sizeLimit: 256Mi
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
{{- end -}}

{{/*
Helm reads every number in values as a float; TOML needs integers as integers. Turns each
whole float of the map into an integer, at any depth, in place (prints nothing).
*/}}
{{- define "omnimesh.integers" -}}
{{- $m := . -}}
{{- range $k, $v := $m -}}
{{- if kindIs "map" $v -}}
{{- include "omnimesh.integers" $v -}}
{{- else if and (kindIs "float64" $v) (eq $v (float64 (int64 $v))) -}}
{{- $_ := set $m $k (int64 $v) -}}
{{- end -}}
{{- end -}}
{{- end -}}
