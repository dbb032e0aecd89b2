package org.prescreen.hapi;

import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.batch2.jobs.export.BulkDataExportProvider;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.interceptor.api.IInterceptorService;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.config.HapiJpaConfig;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirH2Dialect;
import ca.uhn.fhir.jpa.provider.JpaSystemProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.jpa.subscription.match.config.SubscriptionProcessorConfig;
import ca.uhn.fhir.jpa.subscription.match.deliver.email.IEmailSender;
import ca.uhn.fhir.jpa.subscription.submit.config.SubscriptionSubmitterConfig;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import jakarta.persistence.EntityManagerFactory;
import java.util.Properties;
import javax.sql.DataSource;
import org.apache.commons.dbcp2.BasicDataSource;
import org.hl7.fhir.dstu2.model.Subscription.SubscriptionChannelType;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Import;
import org.springframework.context.annotation.Primary;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;

/**
 * The beans a HAPI JPA server needs that its own configuration classes leave to the host:
 * storage, settings, and the REST servlet. Everything else comes from HAPI's configs.
 */
@Configuration
@Import({
  JpaR4Config.class,
  HapiJpaConfig.class,
  JpaBatch2Config.class,
  ThreadPoolFactoryConfig.class,
  Batch2JobsConfig.class,
  SubscriptionChannelConfig.class,
  SubscriptionSubmitterConfig.class,
  SubscriptionProcessorConfig.class
})
public class HarnessConfig {

  /**
   * The constrained mode (system property {@code prescreen.constrained=true} or environment
   * {@code PRESCREEN_HAPI_CONSTRAINED=1}): the same build then behaves like an EHR that allows
   * patient-scoped searches and Group-level export only ({@link PatientScopedInterceptor}).
   */
  static boolean constrained() {
    String property = System.getProperty("prescreen.constrained", "");
    String env = System.getenv().getOrDefault("PRESCREEN_HAPI_CONSTRAINED", "");
    return "true".equalsIgnoreCase(property) || "1".equals(env) || "true".equalsIgnoreCase(env);
  }

  @Bean
  public DataSource dataSource() {
    BasicDataSource source = new BasicDataSource();
    source.setDriver(new org.h2.Driver());
    // A fresh in-memory database per JVM: every test run starts from an empty server.
    source.setUrl("jdbc:h2:mem:prescreen;DB_CLOSE_DELAY=-1");
    source.setUsername("sa");
    source.setPassword("");
    source.setMaxTotal(20);
    return source;
  }

  @Primary
  @Bean
  public LocalContainerEntityManagerFactoryBean entityManagerFactory(
      ConfigurableListableBeanFactory beanFactory,
      DataSource dataSource,
      FhirContext fhirContext,
      JpaStorageSettings storageSettings) {
    LocalContainerEntityManagerFactoryBean factory =
        HapiEntityManagerFactoryUtil.newEntityManagerFactory(beanFactory, fhirContext, storageSettings);
    factory.setPersistenceUnitName("PRESCREEN_HAPI");
    factory.setDataSource(dataSource);
    Properties jpa = new Properties();
    jpa.put("hibernate.dialect", HapiFhirH2Dialect.class.getName());
    jpa.put("hibernate.hbm2ddl.auto", "update");
    jpa.put("hibernate.search.enabled", "false");
    jpa.put("hibernate.format_sql", "false");
    jpa.put("hibernate.show_sql", "false");
    factory.setJpaProperties(jpa);
    return factory;
  }

  @Primary
  @Bean
  public JpaTransactionManager transactionManager(EntityManagerFactory entityManagerFactory) {
    JpaTransactionManager manager = new JpaTransactionManager();
    manager.setEntityManagerFactory(entityManagerFactory);
    return manager;
  }

  @Bean
  public JpaStorageSettings storageSettings() {
    JpaStorageSettings settings = new JpaStorageSettings();
    // Tests read what they just wrote: never answer a search from a cached result.
    settings.setReuseCachedSearchResultsForMillis(0L);
    settings.setAllowMultipleDelete(true);
    settings.setAllowExternalReferences(true);
    settings.setAutoCreatePlaceholderReferenceTargets(false);
    settings.setEnforceReferentialIntegrityOnWrite(false);
    // Bulk $export jobs run their steps as soon as the previous one ends instead of waiting for
    // the next scheduler pass (minutes per export otherwise), and a new kick-off never reuses
    // an earlier job's files: tests export what they just loaded.
    settings.setJobFastTrackingEnabled(true);
    settings.setEnableBulkExportJobReuse(false);
    return settings;
  }

  @Bean
  public PartitionSettings partitionSettings() {
    return new PartitionSettings();
  }

  @Bean
  public SubscriptionSettings subscriptionSettings() {
    SubscriptionSettings settings = new SubscriptionSettings();
    settings.addSupportedSubscriptionType(SubscriptionChannelType.RESTHOOK);
    return settings;
  }

  /** Only rest-hook subscriptions are enabled; an e-mail channel is never configured. */
  @Bean
  public IEmailSender emailSender() {
    return details -> {
      throw new UnsupportedOperationException("e-mail subscriptions are not enabled");
    };
  }

  @Bean
  public RestfulServer restfulServer(
      IFhirSystemDao<?, ?> systemDao,
      ResourceProviderFactory resourceProviders,
      JpaSystemProvider<?, ?> systemProvider,
      DatabaseBackedPagingProvider pagingProvider,
      BulkDataExportProvider bulkExportProvider,
      IInterceptorService storageInterceptors) {
    RestfulServer server = new RestfulServer(systemDao.getContext());
    if (constrained()) {
      // Registered with both: the REST server fires the request hooks (export), the storage
      // layer the search hooks (a batch's searches never pass the request hooks).
      PatientScopedInterceptor constraints = new PatientScopedInterceptor();
      server.registerInterceptor(constraints);
      storageInterceptors.registerInterceptor(constraints);
    }
    server.registerProviders(resourceProviders.createProviders());
    server.registerProvider(systemProvider);
    server.registerProvider(bulkExportProvider);
    server.setPagingProvider(pagingProvider);
    server.setDefaultPrettyPrint(false);
    return server;
  }
}
