#!/usr/bin/env bash
# Gathers the jars of one Apache Kafka release from Maven Central into
# ~/.cache/ofe-tools/kafka-<version>/libs (once; later runs reuse them) and prints the path of the
# launcher, scripts/peers/kafka-broker.sh, which runs a KRaft broker from them on the machine's Java.
set -euo pipefail
version=${OFE_KAFKA_VERSION:-4.1.1}
here=$(cd "$(dirname "$0")" && pwd)
out="$HOME/.cache/ofe-tools/kafka-$version"
if [ ! -f "$out/libs/kafka_2.13-$version.jar" ]; then
  echo "kafka: fetching Apache Kafka $version from Maven Central" >&2
  start=$(date +%s)
  mkdir -p "$out/pom"
  cat >"$out/pom/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.ofe</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$version</version></dependency>
    <!-- The broker logs through SLF4J 1.7; this routes it to Log4j 2, which Kafka 4 configures. -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
POM
  rm -rf "$out/libs.tmp"
  mvn -q -B -f "$out/pom/pom.xml" dependency:copy-dependencies -DoutputDirectory="$out/libs.tmp" \
    -Dmaven.repo.local="$HOME/.cache/ofe-tools/m2" >&2
  rm -rf "$out/libs" && mv "$out/libs.tmp" "$out/libs"
  echo "kafka: fetched in $(( $(date +%s) - start )) s" >&2
fi
echo "$here/kafka-broker.sh"
