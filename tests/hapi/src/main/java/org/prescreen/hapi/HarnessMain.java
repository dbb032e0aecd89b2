package org.prescreen.hapi;

import ca.uhn.fhir.rest.server.RestfulServer;
import java.nio.file.Files;
import java.nio.file.Path;
import org.apache.catalina.Context;
import org.apache.catalina.connector.Connector;
import org.apache.catalina.startup.Tomcat;
import org.springframework.context.annotation.AnnotationConfigApplicationContext;

/**
 * Starts the harness: a Spring context with HAPI's JPA beans, and an embedded Tomcat serving
 * the FHIR endpoint at http://127.0.0.1:PORT/fhir. Prints one READY line with the boot time and
 * the heap in use, which the Python side reads.
 */
public final class HarnessMain {

  private HarnessMain() {}

  public static void main(String[] args) throws Exception {
    int port = Integer.parseInt(args.length > 0 ? args[0] : "8080");
    long started = System.nanoTime();

    AnnotationConfigApplicationContext spring = new AnnotationConfigApplicationContext();
    // HAPI's configuration classes refer to one another in cycles.
    spring.getDefaultListableBeanFactory().setAllowCircularReferences(true);
    spring.register(HarnessConfig.class);
    spring.refresh();

    Path workDir = Files.createTempDirectory("prescreen-hapi-tomcat");
    Tomcat tomcat = new Tomcat();
    tomcat.setBaseDir(workDir.toString());
    Connector connector = new Connector();
    connector.setPort(port);
    connector.setProperty("address", "127.0.0.1");
    tomcat.setConnector(connector);
    Context context = tomcat.addContext("", workDir.toString());
    Tomcat.addServlet(context, "fhir", spring.getBean(RestfulServer.class));
    context.addServletMappingDecoded("/fhir/*", "fhir");
    tomcat.start();

    Runtime runtime = Runtime.getRuntime();
    long usedMb = (runtime.totalMemory() - runtime.freeMemory()) / (1024 * 1024);
    double seconds = (System.nanoTime() - started) / 1e9;
    System.out.printf(
        "READY port=%d constrained=%b boot_seconds=%.1f heap_used_mb=%d%n",
        port, HarnessConfig.constrained(), seconds, usedMb);
    System.out.flush();
    Runtime.getRuntime().addShutdownHook(new Thread(() -> {
      try {
        tomcat.stop();
      } catch (Exception ignored) {
        // shutting down anyway
      }
      spring.close();
    }));
    tomcat.getServer().await();
  }
}
